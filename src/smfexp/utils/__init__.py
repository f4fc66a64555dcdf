"""Small shared helpers, the floor every layer builds on (they import nothing else of smfexp):
atomic file output, the cache, config hashing, the user-fixable error types, model modes."""
