"""POST /predict/ with {"rows": [[...], ...]}: enqueue the task, wait for its answer."""

import json

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from predictions.tasks import predict as predict_task


@csrf_exempt
@require_POST
def predict(request):
    rows = json.loads(request.body)["rows"]
    return JsonResponse(predict_task.delay(rows).get(timeout=60))
