"""The HIL rig: scenarios as data (pilehil.scenario), one runner for any device under test,
reports for people.  See docs/hil.md."""
