"""Jobs: submit, read and list inference jobs (`/api/v1/jobs`)."""
