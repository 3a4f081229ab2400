"""The registry's tables, one group a module; `store.registry.Registry` combines them over one connection."""
