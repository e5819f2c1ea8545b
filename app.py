"""GuardedChat entry point (`python app.py`, `make run`): an interactive chat on the default model.

Importing this module does nothing slow; the model loads on the first question.
Environment: GUARDEDCHAT_DOMAIN (default mingqing), GUARDEDCHAT_MODEL (registry name or GGUF path).
"""

import os
import sys


def main() -> int:
    from guardedchat.cli import main as cli_main

    domain = os.environ.get("GUARDEDCHAT_DOMAIN", "mingqing")
    return cli_main(["chat", "--domain", domain, *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
