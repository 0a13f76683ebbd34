"""``python -m maskclf.synth``: the demo dataset's command under its earlier name (``python -m maskclf.demo``)."""

from maskclf.demo.generate import main

if __name__ == "__main__":
    raise SystemExit(main())
