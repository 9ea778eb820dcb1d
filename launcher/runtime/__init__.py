"""Worker-side runtime: imported only inside training processes (it imports torch)."""
