"""Everything classguard persists: the prediction log, feedback, replay, the model store layout."""
