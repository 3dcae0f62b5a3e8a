"""Registry: model versions and the atomic ``current`` pointer (``store``), the quality gate (``gate``), model cards (``card``)."""
