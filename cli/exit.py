"""The exit codes of every ``heroes`` command, in one place.

A script that drives ``heroes`` (an agency's monitoring, the consortium's cron job, a
research pipeline) branches on these three and nothing else:

    0  OK       the command did what it was asked; a check found nothing wrong
    1  PROBLEM  a check ran and found a problem (a broken receipt or approval chain, an
                epsilon no accountant can give), a run or a served process failed, or the
                operator declined an approval: the output names it
    2  USAGE    the command line, a configuration or an input file is not acceptable
                (unknown flag, bad value, a HeroesError): the message names the rule and
                the fix, and nothing has been changed or trained

A traceback (exit 1 from Python itself) is a bug in heroes, never an expected outcome. The
library functions some commands return through (clients/approve.py, clients/agency.py serve,
server/deploy.py serve) return 0 and 1 in this sense; they cannot import this module, which
sits above them.
"""

from __future__ import annotations

OK = 0
PROBLEM = 1
USAGE = 2

#: The epilog of ``heroes --help``: the same table, for whoever reads help, not the code.
EPILOG = """exit codes (every command):
  0  OK       done; a check found nothing wrong
  1  PROBLEM  a check found a problem (broken receipts or approvals, no epsilon), a run or a
              served process failed, or an approval was declined
  2  USAGE    bad command line, configuration or input: the message names the rule and the fix;
              nothing was changed or trained"""
