"""Data: the official MNIST files, colored-MNIST splits, and the content-addressed cache."""
