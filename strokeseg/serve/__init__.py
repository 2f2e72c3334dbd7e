"""``strokeseg serve``: a local web app around ``strokeseg predict``'s inference.

- :mod:`strokeseg.serve.app`: the server, its JSON API and the security rules;
- :mod:`strokeseg.serve.cases`: case ids, folders and retention;
- :mod:`strokeseg.serve.worker`: one prediction at a time, models loaded once;
- :mod:`strokeseg.serve.pipeline`: one case from its scans to its mask, lesion table and overlay;
- :mod:`strokeseg.serve.command`: the command line;
- ``static/``: the page (plain JavaScript) and the vendored NiiVue viewer.
"""
