"""effdsl test suite."""
