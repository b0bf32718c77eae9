"""The browser console of ``smsc serve`` on its metrics/admin port (issue 17): login and
sessions (:mod:`.auth`), the one-second sample ring behind the overview's live charts
(:mod:`.samples`), the pages, the Server-Sent Events stream and the message search
(:mod:`.web`, :mod:`.messages`). Plain HTML, CSS and JavaScript modules under ``static/``:
no build step."""
