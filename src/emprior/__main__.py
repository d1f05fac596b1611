# The math libraries read their dispatch settings once, when torch loads: pin them first
# (emprior.core.reproducibility), then import the commands.
from emprior.core.reproducibility import pin_from_argv

pin_from_argv()

from emprior.pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
