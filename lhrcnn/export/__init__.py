"""SavedModel export for TF Serving: the serving graph (serving.py), the
label map (categories.py), warm-up requests (warmup.py) and the export itself (saved_model.py)."""
