"""Model codecs: scikit-learn estimators to named arrays and back, and checks on such arrays."""
