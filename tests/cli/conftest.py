from tests.cli.harness import gateway  # noqa: F401  (fixture)
