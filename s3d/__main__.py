"""`python -m s3d`: the same command line as the `s3d` script."""
from s3d.paper.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
