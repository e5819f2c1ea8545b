"""GuardedChat's page (`python app.py`, `make run`, Hugging Face Spaces).

Importing this module does nothing slow; the model loads on the first question. Gradio's own
GRADIO_SERVER_NAME and GRADIO_SERVER_PORT choose the address; GUARDEDCHAT_MODEL the model.
"""

import sys


def main() -> int:
    from guardedchat.ui import launch

    launch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
