"""The prediction task: the model is a forksafe proxy, loaded in each Celery worker."""

import os

import numpy as np
from celery import shared_task
from django.conf import settings

import forksafe

MODEL = forksafe.load_model(settings.MODEL_PATH)


@shared_task
def predict(rows):
    return {"pid": os.getpid(), "y": MODEL.predict(np.asarray(rows, "float32")).tolist()}
