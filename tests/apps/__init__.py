"""The apps, servers and destinations the tests start: in-process, or as processes of their
own by import path (``tests.apps.<module>:<app>``)."""
