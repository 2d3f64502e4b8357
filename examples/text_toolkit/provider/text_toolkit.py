from typing import Any

from dify_plugin import ToolProvider


class TextToolkitProvider(ToolProvider):
    def _validate_credentials(self, credentials: dict[str, Any]) -> None:
        # The toolkit needs no credentials.
        return None
