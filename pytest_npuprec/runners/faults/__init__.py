"""Device faults by model class, apart from the capture hooks (vllm_worker.FAULTS collects them)."""
