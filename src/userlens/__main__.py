"""``python -m userlens``: the CLI, so that ``torchrun -m userlens train ...`` starts one per rank."""

from userlens.cli import main

if __name__ == "__main__":
    main()
