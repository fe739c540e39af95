"""Lease stores, one module per store, all behind ``lockd.stores.base.LeaseStore``."""
