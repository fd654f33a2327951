"""gunicorn settings: two workers, preloaded app, model warmed in each worker."""

from app import MODEL

import forksafe.gunicorn

workers = 2
preload_app = True
bind = "127.0.0.1:8000"
post_fork = forksafe.gunicorn.warm(MODEL)  # load in each worker before its first request
