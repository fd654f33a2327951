"""A proxy shipped to Ray tasks, an actor and Ray Data: one load per worker, none here.

python examples/make_model.py /tmp/model.keras
MODEL_PATH=/tmp/model.keras python examples/ray_tasks.py
"""

import os

import numpy as np

import forksafe

X = np.random.default_rng(0).standard_normal((8, 4)).astype("float32")


def predict(model: forksafe.ModelProxy) -> tuple[int, int, float]:
    total = float(model.predict_on_batch(X).sum())  # first: this loads, in this worker
    return os.getpid(), forksafe.info(model).loads, total


class Scorer:
    """An actor: the proxy arrives once, with its constructor arguments."""

    def __init__(self, model: forksafe.ModelProxy) -> None:
        self.model = model

    def predict(self) -> tuple[int, int, float]:
        return predict(self.model)


class BatchScorer:
    """A Ray Data callable class: one instance per actor of its pool."""

    def __init__(self, model: forksafe.ModelProxy) -> None:
        self.model = model

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pid, loads, _ = predict(self.model)
        return {"pid": np.full(len(batch["id"]), pid), "loads": np.full(len(batch["id"]), loads)}


if __name__ == "__main__":
    import ray
    import ray.data

    model = forksafe.load_model(os.environ.get("MODEL_PATH", "model.keras"))
    # A local cluster on the loopback interface only, no usage statistics sent.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False)
    try:
        task = ray.remote(predict)
        for pid, loads, total in ray.get([task.remote(model) for _ in range(4)]):
            print(f"task: worker {pid}: loads={loads} sum={total:.4f}")
        actor = ray.remote(Scorer).remote(model)
        for pid, loads, total in ray.get([actor.predict.remote() for _ in range(2)]):
            print(f"actor: worker {pid}: loads={loads} sum={total:.4f}")
        rows = ray.data.range(4).map_batches(
            BatchScorer, fn_constructor_args=(model,), compute=ray.data.ActorPoolStrategy(size=1)
        )
        for row in rows.take_all():
            print(f"ray data: worker {row['pid']}: loads={row['loads']}")
    finally:
        ray.shutdown()
    # Shipping is not a use: this process never loaded the model.
    print(f"driver loaded: {forksafe.info(model).loaded}")
