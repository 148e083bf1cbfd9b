"""Imports: a file of prompts and labels, in one of several public formats, into a project.

    file (path, or an upload spooled to a temporary file)
        │  readers.py: one reader per format (pure Python, no Django) turns each source record into
        │  Record (a prompt item + demonstrations + rankings), LeftOut (reason) or BadLine (messages),
        │  each with its line number; JSONL is read line by line, a JSON array element by element
        ▼
    importer.import_file
        pass 1: read and check every record (shape, and the project's rules) and write nothing;
                any bad line → ValidationError {"lines": {n: [...]}} listing every one
        pass 2: read again, in one transaction: prompts through services (deduplicated by content
                hash), then each label in a task of its own, submitted by the label's source (an
                inactive pseudo-user "<source>-import[.<author>]") through services.submit_*
        ▼
    ImportReport: created / duplicates / rankings by k / ties / left out, with reasons

The API (``POST /api/projects/{id}/import/``) and ``manage.py import_data`` call ``import_upload`` and
``import_file``; both take ``on_progress(done, total)``. The project page's upload form posts to the API.
"""
