"""SavedModel export for TF Serving (shared/DESIGN.md §3.5): the serving graph (serving.py), the
label map (categories.py), warm-up requests (warmup.py) and the export itself (saved_model.py)."""
