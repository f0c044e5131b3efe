"""pdfbatch's supervision runtime: policy, actors and the execution of PDF work."""
