"""``python -m mammoclip`` (also under ``torchrun ... -m mammoclip``)."""

from mammoclip.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
