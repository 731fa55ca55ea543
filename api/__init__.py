"""The FastAPI read layer (``uvicorn api.app:app``); ``api.app.create_app`` builds it over given stores."""
