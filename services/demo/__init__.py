"""``mixerless demo``: the whole stack on one machine (the README's ``make run``)."""
