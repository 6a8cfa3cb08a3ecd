"""One module per op: its torch reference, its kernels, its registration and fake."""
