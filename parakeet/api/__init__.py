"""API layer: the only code that sees a Request, a form or a response (routes, error table, middleware)."""
