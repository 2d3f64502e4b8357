from collections.abc import Generator
from typing import Any

import tabulate
import yaml
from dify_plugin import Tool
from dify_plugin.entities.tool import ToolInvokeMessage


class FormatTableTool(Tool):
    def _invoke(self, tool_parameters: dict[str, Any]) -> Generator[ToolInvokeMessage, None, None]:
        rows = [line.split(",") for line in str(tool_parameters["rows"]).splitlines() if line]
        yield self.create_text_message(tabulate.tabulate(rows[1:], headers=rows[0] if rows else ()))
        yield self.create_text_message(yaml.safe_dump({"rows": len(rows)}))
