"""Indicator lexicon of grooming, sextortion and coercion moves (English, Spanish, Portuguese).

Written from the conversation moves of the domain notes (O'Connell 2003; Olson et al. 2007;
Lorenzo-Dus et al. 2016; NCMEC and Europol sextortion alerts; ILO forced-labour
indicators), not from any generator's phrase tables, so that an explanation's indicator
hits are evidence a reader recognises rather than an echo of the synthetic data.

A hit is shown next to a message's share of the score so that an analyst sees *which move*
the message makes; it never changes the score. Every pattern is non-explicit: the signal is
in the moves (probing, secrecy, platform moves, threats, payment demands), not in sexual
words. Matching is case-insensitive on the message's own text, so the offsets index that
text exactly; accents are optional (exports often drop them).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from types import MappingProxyType

# Alternatives per category; each is a regular expression fragment matched on word
# boundaries. Accented letters are written as classes that accept the unaccented letter.
_PHRASES: dict[str, tuple[str, ...]] = {
    "age_profile_probing": (
        r"how old are you", r"what grade are you", r"what year are you in",
        r"are you (?:still )?in (?:school|high school|middle school)",
        r"cu[aá]ntos a[ñn]os tienes", r"qu[eé] edad tienes", r"en qu[eé] (?:curso|grado) est[aá]s",
        r"quantos anos (?:voc[eê]|vc) tem", r"que idade (?:voc[eê]|vc) tem",
        r"em que (?:s[eé]rie|ano) (?:voc[eê]|vc) est[aá]",
    ),
    "flattery_trust": (
        r"(?:so|very) mature for your age", r"only i understand you", r"you can trust me",
        r"nobody understands you like i do", r"you(?:'re| are) (?:so )?special to me",
        r"eres muy madur[ao]", r"solo yo te entiendo", r"puedes confiar en m[ií]",
        r"eres especial para m[ií]",
        r"(?:voc[eê]|vc) [eé] muito madur[ao]", r"s[oó] eu te entendo",
        r"pode confiar em mim", r"(?:voc[eê]|vc) [eé] especial pra mim",
    ),
    "supervision_check": (
        r"do your parents (?:check|look at|see) your phone", r"who else uses your phone",
        r"are your parents (?:home|around)", r"are you alone",
        r"tus padres (?:miran|revisan) tu (?:m[oó]vil|celular|tel[eé]fono)",
        r"est[aá]s sol[ao]", r"qui[eé]n m[aá]s usa tu (?:m[oó]vil|celular)",
        r"seus pais (?:olham|mexem|veem) (?:no )?seu celular", r"(?:voc[eê]|vc) est[aá] sozinh[ao]",
        r"quem mais usa seu celular",
    ),
    "secrecy_exclusivity": (
        r"just between us", r"(?:this is )?our (?:little )?secret", r"don'?t tell (?:anyone|your)",
        r"delete (?:our|the|these) (?:chats?|messages)",
        r"es nuestro secreto", r"entre nosotros", r"no se lo digas a nadie",
        r"borra (?:los|nuestros|este) (?:mensajes|chats?)",
        r"[eé] nosso segredo", r"s[oó] entre a gente", r"n[aã]o conta (?:pra|para) ningu[eé]m",
        r"apaga (?:as|nossas|essas) (?:mensagens|conversas)",
    ),
    "platform_move": (
        r"(?:let'?s )?talk on another app", r"add me on",
        r"switch to (?:a )?(?:private|another|encrypted) app",
        r"(?:hablamos|habla(?:r|mos)) por otra app", r"agr[eé]game (?:en|a)",
        r"p[aá]sate a otra app",
        r"(?:vamos )?(?:falar|conversar) (?:em|no|por) outro app", r"me adiciona no",
        r"chama no privado",
    ),
    "gifts_credits": (
        r"(?:send|buy|give) you (?:some )?(?:game )?credits", r"top up your (?:phone|account)",
        r"gift ?cards? for you",
        r"te recargo (?:el )?saldo", r"te (?:mando|compro) (?:cr[eé]ditos|monedas)",
        r"te dou cr[eé]ditos", r"(?:coloco|p[oô]nho) cr[eé]dito(?:s)? (?:no|pra)",
    ),
    "image_request": (
        r"send me a (?:pic|photo|picture) of you", r"just for me", r"show me (?:a )?(?:pic|photo)",
        r"m[aá]ndame una foto", r"solo para m[ií]", r"env[ií]ame una foto",
        r"me manda uma foto", r"s[oó] pra mim", r"manda (?:uma )?foto",
    ),
    "meeting_approach": (
        r"i could pick you up", r"let'?s meet", r"meet (?:me )?(?:after school|in person)",
        r"where do you live",
        r"te (?:paso|voy) a buscar", r"nos vemos en persona", r"d[oó]nde vives",
        r"posso te buscar", r"vamos nos encontrar", r"onde (?:voc[eê]|vc) mora",
    ),
    "threat_to_share": (
        r"(?:i'?ll|i will) send (?:them|it|the (?:pics|photos)) to your (?:friends|family|school)",
        r"everyone will see", r"(?:i'?ll|i will) (?:post|share) (?:them|your (?:pics|photos))",
        r"se lo mando a tus (?:amigos|padres|contactos)", r"todos (?:lo )?van a ver",
        r"voy a publicar (?:tus )?fotos",
        r"mando pros seus (?:amigos|pais|contatos)", r"todo mundo vai ver",
        r"vou postar (?:suas )?fotos",
    ),
    "payment_demand": (
        r"pay (?:me|in gift cards|now)", r"send (?:me )?(?:the )?money", r"in gift cards",
        r"p[aá]game", r"manda(?:me)? el dinero", r"en tarjetas de regalo",
        r"me paga", r"manda o dinheiro", r"(?:em|no) pix", r"cart[oõ]es? presente",
    ),
    "deadline": (
        r"by tonight", r"(?:you have|within) (?:\d+|one|two|24) hours?", r"before midnight",
        r"antes de esta noche", r"tienes (?:\d+|una|dos|24) horas?", r"antes de medianoche",
        r"at[eé] hoje [aà] noite", r"(?:voc[eê]|vc) tem (?:\d+|uma|duas|24) horas?",
        r"antes da meia[- ]noite",
    ),
    "debt_bondage": (
        r"when the debt is paid", r"you (?:still )?owe (?:me|us)",
        r"pay (?:off )?(?:your|the) debt",
        r"cuando pagues la deuda", r"(?:me|nos) debes", r"tu deuda",
        r"quando pagar a d[ií]vida", r"(?:voc[eê]|vc) (?:me|nos) deve", r"sua d[ií]vida",
    ),
    "documents_retained": (
        r"i keep your (?:passport|documents|papers|id)",
        r"you(?:'ll)? get your (?:passport|papers) back",
        r"yo guardo tu (?:pasaporte|documento)s?", r"tu pasaporte (?:lo tengo|se queda)",
        r"eu fico com (?:o )?seu (?:passaporte|documento)s?", r"seu passaporte fica comigo",
    ),
    "threat_to_family": (
        r"your family will (?:pay|suffer|regret)", r"we know where your family lives",
        r"something (?:will )?happens? to your (?:family|mother|brother|sister)",
        r"tu familia (?:va a pagar|lo va a pagar|sufrir[aá])", r"sabemos d[oó]nde vive tu familia",
        r"sua fam[ií]lia vai (?:pagar|sofrer)", r"sabemos onde sua fam[ií]lia mora",
    ),
}

#: The lexicon's categories, in a fixed order (what an explanation's indicators name).
CATEGORIES: tuple[str, ...] = tuple(_PHRASES)


@functools.cache
def _compiled() -> Mapping[str, re.Pattern[str]]:
    return MappingProxyType({
        cat: re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")(?!\w)", re.IGNORECASE)
        for cat, alts in _PHRASES.items()})


def indicator_hits(text: str) -> tuple[tuple[str, int, int], ...]:
    """The lexicon's hits in one message: (category, start, end) offsets into ``text``,
    ordered by position."""
    hits = [(cat, m.start(), m.end())
            for cat, pattern in _compiled().items() for m in pattern.finditer(text)]
    return tuple(sorted(hits, key=lambda h: (h[1], h[2], h[0])))
