"""Provider adapters: the contract (`base`), the registry, one module per provider.

Nothing in this package touches the database or the runtime.
"""
