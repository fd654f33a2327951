"""Send a few predictions to the worker and print the answers."""

from tasks import predict

if __name__ == "__main__":
    results = [predict.delay([[0.1, 0.2, 0.3, 0.4]]) for _ in range(4)]
    for result in results:
        answer = result.get(timeout=120)
        print(f"worker {answer['pid']}: {answer['y']}")
