"""gunicorn settings for the warm test: the documented one-line post_fork hook."""

import forksafe.gunicorn
from tests.workers.flask_app import MODEL

post_fork = forksafe.gunicorn.warm(MODEL)
