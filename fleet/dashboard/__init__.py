"""The operations dashboard: server-rendered pages of the fleet's state, live, under ``/ui/``.

:mod:`.pages` has the routes (installed into the fleet's app by :func:`.pages.install`),
:mod:`.data` the queries behind them, :mod:`.charts` the inline SVG charts, :mod:`.sessions`
the browser logins. Templates and the one stylesheet and script are beside them, in
``templates/`` and ``static/``. See docs/dashboard.md.
"""
