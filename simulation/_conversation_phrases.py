"""Phrase tables for the synthetic conversation generator (simulation.conversations).

Every line is short, chat-style and deliberately tame: the moves are written so that each
phrasing fits a risky conversation AND a benign one ("send me a photo" of homework, "pay
by tonight" from customer service, "delete the chat" between siblings). That is the
point: the signal is in who says a move and in what order (see simulation/CONVERSATIONS.md),
never in a sexual word. No line states anyone's age, names a real person or holds a
number longer than three digits. Slots: ``{amount}`` (a small sum with its currency) and
``{name}`` (an invented first name from NAMES).
"""

from __future__ import annotations

CONVERSATION_LANGUAGES: tuple[str, ...] = ("en", "es", "pt")

#: Invented first names, used only in greetings.
NAMES: tuple[str, ...] = ("Kavi", "Lorin", "Miro", "Sefa", "Tali", "Varo", "Zeni", "Oren",
                          "Pima", "Rask")

#: ``{amount}`` renderings per language (sums are 20-300, never phone-like).
CURRENCY: dict[str, str] = {"en": "£{n}", "es": "{n} euros", "pt": "{n} reais"}

MOVE_PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "access_probing": {
        "en": ("how old are you?", "what grade are you in?", "what school do you go to?",
               "what year were you born?"),
        "es": ("¿cuántos años tienes?", "¿en qué curso estás?", "¿a qué colegio vas?",
               "¿en qué año naciste?"),
        "pt": ("quantos anos você tem?", "em que série você está?", "qual escola você estuda?",
               "em que ano você nasceu?"),
    },
    "deceptive_trust": {
        "en": ("you're so mature, not like the others", "only I really get you",
               "you can tell me anything", "you're really smart, you know that?"),
        "es": ("eres muy maduro, no como los demás", "solo yo te entiendo de verdad",
               "me puedes contar lo que sea", "eres muy listo, ¿lo sabías?"),
        "pt": ("você é muito maduro, não é como os outros", "só eu te entendo de verdade",
               "pode me contar qualquer coisa", "você é muito esperto, sabia?"),
    },
    "gifts": {
        "en": ("I'll send you some game credits", "want me to top up your phone?",
               "I got you a gift card", "I'll buy you the skin you wanted"),
        "es": ("te mando créditos para el juego", "¿te recargo el saldo?",
               "te compré una tarjeta regalo", "te compro la skin que querías"),
        "pt": ("te mando créditos pro jogo", "quer que eu coloque crédito no teu celular?",
               "comprei um vale-presente pra você", "te compro a skin que você queria"),
    },
    "risk_assessment": {
        "en": ("do your parents check your phone?", "are you home alone right now?",
               "who else uses your computer?", "is anyone with you?"),
        "es": ("¿tus padres miran tu móvil?", "¿estás solo en casa ahora?",
               "¿quién más usa tu ordenador?", "¿hay alguien contigo?"),
        "pt": ("seus pais olham seu celular?", "você está sozinho em casa agora?",
               "quem mais usa seu computador?", "tem alguém com você?"),
    },
    "isolation": {
        "en": ("your friends don't understand you like I do", "you don't need them",
               "they're not real friends", "forget about them, they're noobs"),
        "es": ("tus amigos no te entienden como yo", "no los necesitas",
               "no son amigos de verdad", "olvídate de ellos, son malísimos"),
        "pt": ("seus amigos não te entendem como eu", "você não precisa deles",
               "eles não são amigos de verdade", "esquece eles, são uns noobs"),
    },
    "secrecy": {
        "en": ("this stays between us", "delete the chat after", "don't tell anyone ok?",
               "it's our secret"),
        "es": ("esto queda entre nosotros", "borra el chat después",
               "no se lo digas a nadie, ¿vale?", "es nuestro secreto"),
        "pt": ("isso fica entre nós", "apaga a conversa depois", "não conta pra ninguém, tá?",
               "é nosso segredo"),
    },
    "platform_move": {
        "en": ("let's talk on the other app", "add me on the other app, it's better",
               "move to the private chat", "download this app and message me there"),
        "es": ("hablamos por la otra app", "agrégame en la otra app, es mejor",
               "pasamos al chat privado", "descarga esta app y escríbeme ahí"),
        "pt": ("vamos falar no outro app", "me adiciona no outro app, é melhor",
               "vamos pro chat privado", "baixa esse app e me chama lá"),
    },
    "image_request": {
        "en": ("send me a photo", "can you send a pic?", "send me a picture now",
               "send it just to me"),
        "es": ("mándame una foto", "¿me mandas una foto?", "mándame una foto ahora",
               "mándamela solo a mí"),
        "pt": ("me manda uma foto", "pode mandar uma foto?", "manda uma foto agora",
               "manda só pra mim"),
    },
    "approach": {
        "en": ("I can pick you up after school", "let's meet at the park",
               "I'll come get you on Saturday", "where can I meet you?"),
        "es": ("te puedo recoger después del colegio", "nos vemos en el parque",
               "paso a buscarte el sábado", "¿dónde te puedo ver?"),
        "pt": ("posso te buscar depois da escola", "vamos nos ver no parque",
               "passo pra te pegar no sábado", "onde posso te encontrar?"),
    },
    "threat_share": {
        "en": ("I'll share it with everyone", "everyone will see it",
               "I'll send it to all your contacts", "it goes to the whole group"),
        "es": ("lo voy a compartir con todos", "todos lo van a ver",
               "se lo mando a todos tus contactos", "va para todo el grupo"),
        "pt": ("vou compartilhar com todo mundo", "todo mundo vai ver",
               "vou mandar pra todos os seus contatos", "vai pro grupo inteiro"),
    },
    "payment_demand": {
        "en": ("pay {amount} now", "send {amount} in gift cards", "you have to pay {amount}",
               "transfer {amount} to this account"),
        "es": ("paga {amount} ya", "manda {amount} en tarjetas regalo", "tienes que pagar {amount}",
               "transfiere {amount} a esta cuenta"),
        "pt": ("paga {amount} agora", "manda {amount} em vale-presente",
               "você tem que pagar {amount}", "transfere {amount} pra essa conta"),
    },
    "deadline": {
        "en": ("you have until tonight", "by tomorrow at the latest", "last chance, midnight",
               "today or it's over"),
        "es": ("tienes hasta esta noche", "mañana como muy tarde", "última oportunidad, medianoche",
               "hoy o se acabó"),
        "pt": ("você tem até hoje à noite", "até amanhã no máximo", "última chance, meia-noite",
               "hoje ou acabou"),
    },
    "debt": {
        "en": ("you still owe me {amount}", "you still owe for the ticket",
               "that goes on what you owe", "pay back what you owe first"),
        "es": ("todavía me debes {amount}", "todavía debes el billete", "eso va a lo que debes",
               "primero devuelve lo que debes"),
        "pt": ("você ainda me deve {amount}", "você ainda deve a passagem",
               "isso entra no que você deve", "primeiro paga o que você deve"),
    },
    "document_retention": {
        "en": ("your ID stays with me until then", "you get your card back when it's done",
               "leave your passport with me", "I'm keeping your documents for now"),
        "es": ("tu carnet se queda conmigo hasta entonces", "te devuelvo la tarjeta cuando acabe",
               "déjame tu pasaporte", "me quedo con tus papeles por ahora"),
        "pt": ("sua identidade fica comigo até lá", "você recebe o cartão de volta quando acabar",
               "deixa seu passaporte comigo", "vou ficar com seus documentos por enquanto"),
    },
    "family_threat": {
        "en": ("your family will hear about this", "we'll call your parents",
               "think about your mother", "we know where your family lives"),
        "es": ("tu familia se va a enterar", "vamos a llamar a tus padres", "piensa en tu madre",
               "sabemos dónde vive tu familia"),
        "pt": ("sua família vai ficar sabendo", "vamos ligar pros seus pais", "pensa na sua mãe",
               "a gente sabe onde sua família mora"),
    },
    "guardian_involved": {
        "en": ("ask your mum or dad first", "I'll check with your parents",
               "your parents need to sign the form", "I'll copy your mum on this"),
        "es": ("pregunta primero a tu madre o a tu padre", "lo hablo con tus padres",
               "tus padres tienen que firmar la hoja", "pongo a tu madre en copia"),
        "pt": ("pergunta pro seu pai ou sua mãe primeiro", "vou falar com seus pais",
               "seus pais precisam assinar o formulário", "vou colocar sua mãe na conversa"),
    },
    "public_group": {
        "en": ("I'll post it in the team group", "sharing with the whole class",
               "see everyone at practice", "it's on the school page for all"),
        "es": ("lo pongo en el grupo del equipo", "lo comparto con toda la clase",
               "nos vemos todos en el entreno", "está en la web del colegio para todos"),
        "pt": ("vou postar no grupo do time", "vou compartilhar com a turma toda",
               "vejo todo mundo no treino", "está na página da escola pra todos"),
    },
}

#: Small talk that every kind of conversation uses, by either side (the friendship stage
#: of grooming talks about school and games too, O'Connell 2003).
FILLER: dict[str, tuple[str, ...]] = {
    "en": ("hi {name}", "hey how are you", "lol", "what are you doing?",
           "did you finish the homework?", "practice is at 5", "the match was fun",
           "what game are you playing?", "i'm so bored", "see you tomorrow",
           "the library closes early today", "my phone is almost dead", "haha true",
           "good night", "thanks!", "what time?", "that level is so hard", "it's raining again"),
    "es": ("hola {name}", "hey, ¿qué tal?", "jaja", "¿qué haces?", "¿terminaste los deberes?",
           "el entreno es a las 5", "el partido estuvo genial", "¿a qué juegas?",
           "qué aburrimiento", "hasta mañana", "la biblioteca cierra pronto hoy",
           "me queda poca batería", "jaja verdad", "buenas noches", "¡gracias!", "¿a qué hora?",
           "ese nivel es dificilísimo", "otra vez llueve"),
    "pt": ("oi {name}", "e aí, tudo bem?", "kkkk", "o que você tá fazendo?",
           "terminou a lição de casa?", "o treino é às 5", "o jogo foi muito bom",
           "que jogo você tá jogando?", "tô muito entediado", "até amanhã",
           "a biblioteca fecha cedo hoje", "meu celular tá quase sem bateria", "kkk verdade",
           "boa noite", "valeu!", "que horas?", "essa fase é muito difícil", "tá chovendo de novo"),
}

#: Short replies, by whichever side did not make the last move.
REPLIES: dict[str, tuple[str, ...]] = {
    "en": ("ok", "why?", "idk", "haha", "sure", "really?", "maybe", "no", "fine",
           "what do you mean?", "hmm", "yeah"),
    "es": ("vale", "¿por qué?", "ni idea", "jaja", "claro", "¿en serio?", "quizás", "no",
           "bueno", "¿qué quieres decir?", "mmm", "sí"),
    "pt": ("tá", "por quê?", "sei lá", "kkk", "claro", "sério?", "talvez", "não", "beleza",
           "como assim?", "hmm", "sim"),
}

EMOJI: tuple[str, ...] = ("🙂", "😂", "👍", "🎮", "📚")
