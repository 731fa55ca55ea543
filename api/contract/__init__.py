"""The trading services' contract behind /api/v1: datasets, typed filters, auth scopes, klines mapping."""
