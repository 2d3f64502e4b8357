from dify_plugin import DifyPluginEnv, Plugin

# Imported at start so that a missing dependency fails the start, not the first call.
import tabulate  # noqa: F401
import wikipedia  # noqa: F401
import yaml  # noqa: F401

plugin = Plugin(DifyPluginEnv(MAX_REQUEST_TIMEOUT=120))

if __name__ == "__main__":
    plugin.run()
