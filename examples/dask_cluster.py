"""A proxy shipped to dask.distributed process workers: it loads once in each, never here.

python examples/make_model.py /tmp/model.keras
MODEL_PATH=/tmp/model.keras python examples/dask_cluster.py
"""

import os

import numpy as np

import forksafe


def predict(model: forksafe.ModelProxy, seed: int) -> tuple[int, int, float]:
    x = np.random.default_rng(seed).standard_normal((8, 4)).astype("float32")
    total = float(model.predict_on_batch(x).sum())  # first: this loads, in this worker
    return os.getpid(), forksafe.info(model).loads, total


if __name__ == "__main__":
    from distributed import Client, LocalCluster

    model = forksafe.load_model(os.environ.get("MODEL_PATH", "model.keras"))
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        # Passed with every task, the proxy is unpickled once per task, and each worker
        # turns every copy into the one proxy it holds for that source: one load each.
        passed = client.map(predict, [model] * 6, range(6), pure=False)
        # Scattered once, it is one object per worker from the start: one load each too.
        shared = client.scatter(model, broadcast=True)
        scattered = client.map(predict, [shared] * 6, range(6), pure=False)
        for way, futures in (("passed", passed), ("scattered", scattered)):
            for pid, loads, total in client.gather(futures):
                print(f"{way}: worker {pid}: loads={loads} sum={total:.4f}")
    # Shipping is not a use: this process never loaded the model.
    print(f"client loaded: {forksafe.info(model).loaded}")
