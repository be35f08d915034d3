"""HTTP doors: each module translates one wire format to jobs and back."""
