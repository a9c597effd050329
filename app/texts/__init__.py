"""Text shared by the offline job and the serving side: the calibration/evaluation split of
Python's documentation, the held-out evaluation texts cut into byte spans, and the
bits-per-byte arithmetic. Torch-free, and it imports nothing of the job, the engines, the
gateway, the metrics or the bench: they all import it."""
