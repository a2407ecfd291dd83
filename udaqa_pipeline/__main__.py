"""``python -m udaqa_pipeline ...`` (and ``torchrun ... -m udaqa_pipeline features ...``): the CLI."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="udaqa-pipeline")
