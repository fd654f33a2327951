"""PySpark ``local[2]``: a JVM, its Python daemon and the workers the daemon forks.

A driver in a fresh interpreter ships one proxy every way users do (an RDD
closure, a broadcast variable, ``mapInPandas``, a ``pandas_udf``), with
Python worker reuse on (the default) and off. Each worker process loads
once; the driver never loads and never imports TensorFlow.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

import pytest

from tests.models import Models
from tests.support import requires
from tests.workers.engines import check_run, run_driver

pytestmark = pytest.mark.timeout(420)


@pytest.mark.support("Spark", "local[2]", case="spark.python.worker.reuse={reuse}")
@pytest.mark.parametrize("reuse", ["true", "false"], ids=["reuse", "no-reuse"])
def test_local_session(models: Models, tmp_path: Any, reuse: str) -> None:
    """Right answers, one load per Python worker process, none in the driver."""
    requires.package("pyspark")
    requires.package("pyarrow")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        requires.missing("needs Java (PySpark needs a JVM): apt-get install default-jre")
    load_log = str(tmp_path / "loads.log")
    env = {
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    result = run_driver(
        "spark_driver", [models.keras, load_log, reuse], env, str(tmp_path / "driver.log")
    )
    _, reference = models.reference()
    answered, loads = check_run(result, load_log, reference)
    assert set(loads) == answered  # and only processes that answered
    tasks = sum(len(answers) for answers in result["results"].values())
    if reuse == "true":
        assert len(answered) < tasks  # the daemon's workers served several tasks each
    else:
        assert len(answered) == tasks  # a fresh worker per task, each loading once
