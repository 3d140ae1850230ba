"""`python -m vlm_classify`: the command line, also as `accelerate launch -m vlm_classify ...`."""

from .cli import main

if __name__ == "__main__":
    main()
