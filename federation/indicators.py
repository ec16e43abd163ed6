"""Indicator categories for explanations: which trafficking indicator a phrase points at.

The lexicon below is written from ../shared/DOMAIN.md (the indicator table with its
evidence notes, the ILO forced-labour indicators) in English, Spanish and Portuguese. It is
NOT the synthetic generator's phrase list (clients never read simulation code), so on
synthetic adverts it misses phrasings the generator invents, and on real adverts it will
miss local slang: a phrase it cannot place is shown as ``unlisted``, never guessed.

The category only labels a phrase for the analyst; the model's weights decide which phrases
are shown. ``evidence`` repeats DOMAIN.md's grading so that an analyst sees, next to the
phrase, how much that kind of indicator is worth.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True)
class Indicator:
    name: str
    label: str
    evidence: str
    pattern: re.Pattern[str]


def _words(*alternatives: str) -> re.Pattern[str]:
    """Alternatives matched at word starts in lower-cased NFKC text (prefixes allowed)."""
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")", re.UNICODE)


_DIGIT_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve",
    "zero", "um", "dois", "três", "quatro", "sete", "oito", "nove",
)

INDICATORS: tuple[Indicator, ...] = (
    Indicator("trust_claims", "trustworthy or professional claims",
              "predictive (NIJ/JRSA 2024 study)",
              _words(r"100\s*%", "real", "genuin", "verif", "guarant", "garant", "trust",
                     "reliab", "review", "no fake", "sin engaño", "sem engan", "fiabl",
                     "serie?dad", "discre", "autentic", "auténtic")),
    Indicator("obscured_phone", "obscured phone number", "predictive",
              re.compile(r"(?<!\w)(?:" + "|".join(_DIGIT_WORDS) + r")(?:\s*[-.·_]\s*\w+){2,}"
                         r"|\d(?:\s*[.·_*|/]\s*\d){4,}", re.UNICODE)),
    Indicator("youth_language", "youth-suggesting language", "predictive",
              _words("young", "youth", "student", "schoolgirl", "teen", "petite", "sweet",
                     "shy", "innocent", "joven", "jovencit", "estudiant", "universitari",
                     "colegial", "niña", "dulce", "tímid", "timid", "inocent", "novinh",
                     "novita", "meiga", "menina")),
    Indicator("ethnicity_listed", "ethnicity or nationality (special-category data)",
              "predictive, but special-category data: masked from the features by default",
              _words("latina", "asian", "asiát", "ebony", "exotic", "exótic", "african",
                     "brasileñ", "brasileir", "colombian", "venezolan", "russian", "rusa",
                     "slavic", "eslava", "thai", "oriental", "mulata")),
    Indicator("managed_voice", "third-person or managed voice",
              "practitioner lists, unvalidated",
              _words("she is", "she's", "she will", "ask for", "pregunta por", "pergunta por",
                     "ella (?:es|está|te)", "ela (?:é|está|te)", "call her", "llámala",
                     "ligue para ela", "her manager", "booking agent", "agenda con",
                     "our girl", "nuestra chica", "nossa menina")),
    Indicator("multiple_providers", "several providers in one advert",
              "practitioner lists",
              _words("new girls", "girls every", "several girls", "many girls", "chicas nuevas",
                     "varias chicas", "nuevas chicas", "meninas novas", "novas meninas",
                     "várias meninas", "raparigas novas", "choose from", "elige entre",
                     "escolha entre", "every week new", "cada semana")),
    Indicator("availability_control", "availability and control",
              "practitioner lists",
              _words("24/7", "24 ?h", "24 horas", "24 hours", "incall only", "outcall only",
                     "text only", "sms only", "whatsapp only", "solo whatsapp", "só whatsapp",
                     "solo sms", "no calls", "sin llamadas", "sem chamadas", "always available",
                     "siempre disponible", "sempre disponível", "disponible 24", "disponível 24")),
    Indicator("new_in_town", "movement (\"new in town\")",
              "weak or NEGATIVE in the 2024 study",
              _words("new in town", "just arrived", "this week only", "only this week",
                     "recién llegada", "recien llegada", "nueva en la ciudad", "recém chegada",
                     "recem chegada", "nova na cidade", "solo esta semana", "só esta semana",
                     "de paso", "de passagem", "visiting")),
    Indicator("obfuscation", "obfuscation: deliberate typos, leetspeak, emoji codes",
              "common; weak on its own",
              re.compile(r"(?<!\w)\w*[a-z][0-9@$][a-z]\w*|(?<!\w)\w*[a-z]3\w*|"
                         r"(?<!\w)(?:gfe|pse|bbbj|xoxo)(?!\w)", re.UNICODE)),
    Indicator("unrealistic_pay", "unrealistic pay", "ILO indicator (deception); weak alone",
              _words("earn", "no experience", "sin experiencia", "sem experiência",
                     "sem experiencia", "gana", "ganha", "high pay", "easy money",
                     "dinero fácil", "dinheiro fácil", "per month", "al mes", "por mês",
                     "por mes", "a week", "a la semana", "por semana", "salario alto")),
    Indicator("travel_housing_provided", "travel and housing provided",
              "ILO indicator (deception, dependency)",
              _words("we pay your", "ticket", "flight", "housing", "accommodation",
                     "pagamos", "alojamiento", "alojamento", "vivienda", "moradia", "billete",
                     "pasaje", "passagem", "bilhete", "housing included", "incluid", "incluíd")),
    Indicator("recruitment_fee", "recruitment fees or wage deductions",
              "ILO indicator (debt bondage)",
              _words("fee", "deposit", "deduct", "from (?:your )?first (?:wage|salar|pay)",
                     "cuota", "tasa de", "matrícula", "inscripción", "descont", "fianza",
                     "caução", "taxa de", "primer sueldo", "primeiro salário")),
    Indicator("document_retention", "document retention",
              "ILO indicator (retention of identity documents)",
              _words("passport", "documents?", "pasaporte", "passaporte", "documentos?",
                     "we keep", "guardamos", "retenemos", "ficamos com", "id card", "dni")),
    Indicator("no_company_contact", "no company name; contact by app or webmail only",
              "practitioner lists",
              _words("whatsapp", "telegram", "signal", "gmail", "hotmail", "yahoo", "outlook",
                     "only by message", "solo por mensaje", "só por mensagem", "dm me",
                     "private message", "mensaje privado", "mensagem privada")),
    Indicator("gender_age_targeting", "gender or age targeting",
              "ILO indicator (targeting the vulnerable); weak alone",
              _words(r"18\s*-\s*2\d", "girls", "women only", "chicas", "mujeres", "meninas",
                     "raparigas", "mulheres", "señoritas", "hostess", "azafata", "modelos?",
                     "good appearance", "buena presencia", "boa aparência")),
    Indicator("urgency", "urgency", "ILO indicator (deception); weak alone",
              _words("urgent", "leave this week", "start now", "start tomorrow", "immediate",
                     "urgente", "inmediat", "imediat", "salida esta semana", "ya mismo",
                     "hoje mesmo", "this week", "esta semana", "asap")),
)

BY_NAME: dict[str, Indicator] = {i.name: i for i in INDICATORS}
UNLISTED = "unlisted"


def _norm(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


def categorize(phrase: str) -> str:
    """The indicator a phrase matches first in the lexicon's order, else ``unlisted``."""
    norm = _norm(phrase)
    for indicator in INDICATORS:
        if indicator.pattern.search(norm):
            return indicator.name
    return UNLISTED
