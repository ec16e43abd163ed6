"""Phrase tables for the synthetic advert generator.

Everything here is fictional and deliberately tame: escort-style adverts talk about
massage, dinners and company, never explicit content; no phrase states an age under 18
(the only ages are adult ranges such as 18-25 in job targeting). Site names use the
reserved ``.example`` and ``.test`` domains.

Phrases are written per base language (en, es, pt); slots in braces are filled per advert
(``{name}``, ``{city}``, ``{price}``, ``{pay}``, ``{fee}``, ``{day}``, ``{company}``,
``{job}``, ``{phone}``) or per regional variant from ``VOCAB`` (``{flat}``, ``{ticket}``,
...), which is where es-ES and es-419, pt-PT and pt-BR differ.
"""

from __future__ import annotations

BASE_LANGUAGE: dict[str, str] = {
    "en": "en",
    "es-ES": "es",
    "es-419": "es",
    "pt-PT": "pt",
    "pt-BR": "pt",
}

#: Local vocabulary per regional variant ("piso" in Spain, "departamento" in Mexico).
VOCAB: dict[str, dict[str, str]] = {
    "flat": {"en": "flat", "es-ES": "piso", "es-419": "departamento", "pt-PT": "apartamento",
             "pt-BR": "apê"},
    "mobile": {"en": "mobile", "es-ES": "móvil", "es-419": "celular", "pt-PT": "telemóvel",
               "pt-BR": "celular"},
    "ticket": {"en": "ticket", "es-ES": "billete", "es-419": "pasaje", "pt-PT": "bilhete",
               "pt-BR": "passagem"},
    "the_ticket": {"en": "the ticket", "es-ES": "el billete", "es-419": "el pasaje",
                   "pt-PT": "o bilhete", "pt-BR": "a passagem"},
    "contact": {"en": "contact", "es-ES": "contacto", "es-419": "contacto", "pt-PT": "contacto",
                "pt-BR": "contato"},
    "shared": {"en": "shared", "es-ES": "compartido", "es-419": "compartido",
               "pt-PT": "partilhado", "pt-BR": "compartilhado"},
    "abroad": {"en": "abroad", "es-ES": "en el extranjero", "es-419": "en el extranjero",
               "pt-PT": "no estrangeiro", "pt-BR": "no exterior"},
    "girls": {"en": "girls", "es-ES": "chicas", "es-419": "chicas", "pt-PT": "raparigas",
              "pt-BR": "meninas"},
    "deposit": {"en": "deposit", "es-ES": "fianza", "es-419": "depósito", "pt-PT": "caução",
                "pt-BR": "caução"},
    "weekends": {"en": "weekends", "es-ES": "fines de semana", "es-419": "fines de semana",
                 "pt-PT": "fins de semana", "pt-BR": "finais de semana"},
    "waiter": {"en": "waiter", "es-ES": "camarero", "es-419": "mesero",
               "pt-PT": "empregado de mesa", "pt-BR": "garçom"},
    "in_city": {"en": "in", "es-ES": "en", "es-419": "en", "pt-PT": "em", "pt-BR": "em"},
}

ESCORT_INDICATORS: tuple[str, ...] = (
    "trust_claims",
    "obscured_phone",
    "youth_language",
    "ethnicity_listed",
    "managed_voice",
    "multiple_providers",
    "availability_control",
    "new_in_town",
    "obfuscation",
)

LABOUR_INDICATORS: tuple[str, ...] = (
    "unrealistic_pay",
    "travel_housing_provided",
    "recruitment_fee",
    "document_retention",
    "no_company_contact",
    "gender_age_targeting",
    "urgency",
)

#: Share of an entity's templates carrying each indicator: (benign entity, exploitative).
#: Benign posters use indicators too (single indicators are weak evidence); exploitative
#: ones use positive-weight indicators more and "new in town" less.
PROPENSITY: dict[str, tuple[float, float]] = {
    "trust_claims": (0.10, 0.70),
    "obscured_phone": (0.08, 0.50),
    "youth_language": (0.05, 0.50),
    "ethnicity_listed": (0.12, 0.45),
    "managed_voice": (0.10, 0.45),
    "multiple_providers": (0.06, 0.35),
    "availability_control": (0.20, 0.50),
    "new_in_town": (0.35, 0.15),
    "obfuscation": (0.20, 0.40),
    "unrealistic_pay": (0.12, 0.65),
    "travel_housing_provided": (0.30, 0.65),
    "recruitment_fee": (0.04, 0.55),
    "document_retention": (0.02, 0.45),
    "no_company_contact": (0.20, 0.65),
    "gender_age_targeting": (0.08, 0.50),
    "urgency": (0.25, 0.55),
}

INDICATOR_PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "trust_claims": {
        "en": ("100% real photos, no surprises", "genuine photos, real person",
               "verified profile, no fakes", "trusted and reliable, many good reviews",
               "real pictures guaranteed"),
        "es": ("fotos 100% reales, sin sorpresas", "fotos reales garantizadas",
               "perfil verificado, sin engaños", "seriedad y discreción garantizadas",
               "soy real, fotos actuales"),
        "pt": ("fotos 100% reais, sem surpresas", "fotos reais garantidas",
               "perfil verificado, sem enganos", "seriedade e discrição garantidas",
               "sou real, fotos atuais"),
    },
    # obscured_phone phrases are built from the advert's phone number, see generator.
    "youth_language": {
        "en": ("young student, sweet and new", "sweet university student",
               "young and sweet student girl", "shy young student"),
        "es": ("jovencita estudiante", "estudiante universitaria muy dulce",
               "jovencita dulce y tímida", "universitaria jovencita"),
        "pt": ("novinha estudante", "universitária novinha e meiga", "novinha tímida e meiga",
               "estudante novinha e doce"),
    },
    # Built only from federation.text.SPECIAL_CATEGORY_TERMS (checked by the tests).
    "ethnicity_listed": {
        "en": ("exotic latina", "asian", "ebony", "russian", "exotic brazilian", "slavic",
               "thai"),
        "es": ("latina exótica", "colombiana", "venezolana", "brasileña", "rusa",
               "asiática exótica", "ucraniana"),
        "pt": ("brasileira morena", "latina exótica", "russa", "asiática", "africana",
               "colombiana"),
    },
    "managed_voice": {
        "en": ("she is waiting for you, ask for {name}", "call my manager to book {name}",
               "ask for {name}, her friend answers the phone",
               "my friend {name} will see you, book through me"),
        "es": ("pregunta por {name}", "ella te espera, pregunta por {name}",
               "reservas con su encargado, pregunta por {name}",
               "llama y pregunta por la chica {name}"),
        "pt": ("pergunte pela {name}", "ela te espera, pergunte pela {name}",
               "marque com o responsável, pergunte pela {name}", "ligue e peça pela {name}"),
    },
    "multiple_providers": {
        "en": ("new girls every week", "several girls available", "choose from our girls",
               "different girls every day"),
        "es": ("chicas nuevas cada semana", "varias chicas disponibles",
               "elige entre nuestras chicas", "chicas diferentes cada día"),
        "pt": ("{girls} novas toda semana", "várias {girls} disponíveis",
               "escolha entre as nossas {girls}", "{girls} diferentes todos os dias"),
    },
    "availability_control": {
        "en": ("available 24/7, incall only, text only", "24 hours, text only, no calls",
               "always available, incall only", "open all night, messages only"),
        "es": ("disponible 24h, solo WhatsApp", "24 horas, solo mensajes",
               "siempre disponible, solo en mi {flat}", "abierto toda la noche, solo WhatsApp"),
        "pt": ("disponível 24h, só WhatsApp", "24 horas, só mensagens",
               "sempre disponível, só no meu {flat}", "aberto a noite toda, só WhatsApp"),
    },
    "new_in_town": {
        "en": ("new in town, this week only", "just arrived in {city}, few days only",
               "visiting {city} this week", "new in {city}, short stay"),
        "es": ("nueva en la ciudad", "recién llegada a {city}, pocos días",
               "de visita en {city} esta semana", "nueva en {city}, solo esta semana"),
        "pt": ("nova na cidade", "acabei de chegar, poucos dias em {city}",
               "de passagem por {city} esta semana", "novidade em {city}, só esta semana"),
    },
    "obfuscation": {
        "en": ("n3w", "sw33t", "d1screet", "b3autiful", "r3al 🌹🌹🌹"),
        "es": ("nu3va", "b3llísima", "d1screta", "gu4pa", "r3al 🌹🌹🌹"),
        "pt": ("n0vidade", "l1nda", "d1screta", "b3la", "r3al 🌹🌹🌹"),
    },
    "unrealistic_pay": {
        "en": ("earn {pay} a month, no experience needed", "easy money, up to {pay} monthly",
               "guaranteed {pay} per month, no skills required",
               "high pay, {pay} a month from day one"),
        "es": ("gana {pay} al mes, sin experiencia", "dinero fácil, hasta {pay} al mes",
               "sueldo garantizado de {pay} al mes sin experiencia",
               "{pay} al mes desde el primer día"),
        "pt": ("ganhe {pay} por mês, sem experiência", "dinheiro fácil, até {pay} por mês",
               "salário garantido de {pay} sem experiência", "{pay} por mês desde o primeiro dia"),
    },
    "travel_housing_provided": {
        "en": ("we pay your ticket, housing included", "flight and accommodation provided",
               "free travel and a room on arrival", "we arrange visa, ticket and housing"),
        "es": ("te pagamos el {ticket}, alojamiento incluido", "vuelo y alojamiento incluidos",
               "viaje gratis y habitación al llegar",
               "nos encargamos de visa, {ticket} y vivienda"),
        "pt": ("pagamos {the_ticket}, alojamento incluído", "voo e alojamento incluídos",
               "viagem grátis e quarto na chegada", "tratamos do visto, viagem e moradia"),
    },
    "recruitment_fee": {
        "en": ("registration fee of {fee}, travel deducted from first wages",
               "small fee for paperwork, paid from your salary",
               "ticket cost taken from your first wages", "pay {fee} to secure your place"),
        "es": ("cuota de inscripción de {fee}, el viaje se descuenta del primer sueldo",
               "pequeña tasa por trámites, se descuenta del salario",
               "el {ticket} se descuenta de tus primeros pagos",
               "paga {fee} para reservar tu plaza"),
        "pt": ("taxa de inscrição de {fee}, a viagem é descontada do primeiro salário",
               "pequena taxa de papelada, descontada do salário",
               "o custo da viagem é descontado dos primeiros pagamentos",
               "pague {fee} para garantir a vaga"),
    },
    "document_retention": {
        "en": ("bring your passport, we keep documents for paperwork",
               "passport held by the company during the contract",
               "hand over your ID on arrival, we look after it",
               "documents kept safe by the employer"),
        "es": ("trae tu pasaporte, nosotros guardamos los documentos",
               "la empresa guarda el pasaporte durante el contrato",
               "entrega tu documentación al llegar, nosotros la custodiamos",
               "documentos retenidos por el empleador para trámites"),
        "pt": ("traga o passaporte, nós guardamos os documentos",
               "a empresa fica com o passaporte durante o contrato",
               "entregue os documentos na chegada, nós guardamos",
               "documentos retidos pelo empregador para papelada"),
    },
    "no_company_contact": {
        "en": ("contact only by WhatsApp, no office",
               "message this number only, no company details",
               "write to jobs.abroad.demo@webmail.example, no calls", "details by Telegram only"),
        "es": ("contacto solo por WhatsApp, sin oficina",
               "solo mensajes a este número, sin datos de empresa",
               "escribe a empleo.demo@correo.example, no llamadas",
               "información solo por Telegram"),
        "pt": ("{contact} só por WhatsApp, sem escritório",
               "só mensagens para este número, sem dados da empresa",
               "escreva para vagas.demo@correio.example, sem chamadas",
               "informações só pelo Telegram"),
    },
    "gender_age_targeting": {
        "en": ("girls 18-25, hostess work abroad", "looking for young women 18-25",
               "only girls aged 18 to 25", "attractive young ladies 20-28 wanted"),
        "es": ("chicas de 18 a 25 años, trabajo de azafata {abroad}",
               "buscamos mujeres jóvenes 18-25", "solo chicas entre 18 y 25 años",
               "señoritas de buena presencia 20-28"),
        "pt": ("{girls} 18-25, trabalho de hostess {abroad}", "procuramos mulheres jovens 18-25",
               "só {girls} entre 18 e 25 anos", "moças de boa aparência 20-28"),
    },
    "urgency": {
        "en": ("leave this week", "start immediately, places limited", "urgent, travel in days",
               "only few places left, apply today"),
        "es": ("salida esta semana", "incorporación inmediata, plazas limitadas",
               "urgente, viaje en pocos días", "quedan pocas plazas, llama hoy"),
        "pt": ("partida esta semana", "início imediato, vagas limitadas",
               "urgente, viagem em poucos dias", "restam poucas vagas, ligue hoje"),
    },
}

#: Spelled digits for the "obscured phone" indicator.
DIGIT_WORDS: dict[str, tuple[str, ...]] = {
    "en": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    "es": ("cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve"),
    "pt": ("zero", "um", "dois", "três", "quatro", "cinco", "seis", "sete", "oito", "nove"),
}

#: Filler text per category and base language: openers, bodies, closers with and
#: without the phone number. No indicator vocabulary on purpose.
FILLER: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "escort": {
        "en": {
            "open": ("Relaxing massage in {city}", "Elegant companion for dinners in {city}",
                     "Sweet company and good conversation", "Hi, I am {name}",
                     "{name}, charming companion in {city}", "Quiet massage studio in {city}"),
            "body": ("Appointments {day}", "Rates from {price}", "Clean and discreet place",
                     "Dinner dates and events", "Friendly and relaxed meetings",
                     "Respectful gentlemen only", "Hotel visits possible"),
            "close_phone": ("Call {phone}", "Text {phone}", "Book on {phone}"),
            "close_plain": ("Send a message", "Contact me for details"),
        },
        "es": {
            "open": ("Masaje relajante en {city}", "Acompañante elegante para cenas en {city}",
                     "Compañía agradable y buena conversación", "Hola, soy {name}",
                     "{name}, compañía encantadora en {city}",
                     "Centro de masajes tranquilo en {city}"),
            "body": ("Citas {day}", "Tarifas desde {price}", "Lugar limpio y discreto",
                     "Cenas y eventos", "Encuentros tranquilos y amables",
                     "Solo caballeros educados", "Visitas a hotel"),
            "close_phone": ("Llama al {phone}", "Escribe al {phone}", "Reservas en el {phone}"),
            "close_plain": ("Escríbeme para más información", "Contáctame"),
        },
        "pt": {
            "open": ("Massagem relaxante em {city}",
                     "Acompanhante elegante para jantares em {city}",
                     "Companhia agradável e boa conversa", "Olá, sou a {name}",
                     "{name}, companhia encantadora em {city}",
                     "Espaço de massagem tranquilo em {city}"),
            "body": ("Atendimento {day}", "Valores a partir de {price}", "Local limpo e discreto",
                     "Jantares e eventos", "Encontros tranquilos e simpáticos",
                     "Só cavalheiros educados", "Atendo em hotel"),
            "close_phone": ("Ligue {phone}", "Mensagem para {phone}", "Marcações pelo {phone}"),
            "close_plain": ("Envie mensagem para mais informações", "Fale comigo"),
        },
    },
    "job": {
        "en": {
            "open": ("{company} is hiring in {city}", "Staff wanted: {job} in {city}",
                     "Job offer: {job}", "Seasonal work as {job}"),
            "body": ("Contract and training provided", "Shifts {day}", "Salary {price} per month",
                     "Experience welcome", "Friendly team", "Apply with your CV"),
            "close_phone": ("Call {phone} for an interview", "Questions: {phone}"),
            "close_plain": ("Send your CV to jobs@{company_slug}.example",
                            "Apply at our office in {city}"),
        },
        "es": {
            "open": ("{company} busca personal en {city}", "Se necesita {job} en {city}",
                     "Oferta de empleo: {job}", "Trabajo de temporada como {job}"),
            "body": ("Contrato y formación", "Turnos {day}", "Salario {price} al mes",
                     "Se valora experiencia", "Buen ambiente de trabajo", "Envía tu currículum"),
            "close_phone": ("Llama al {phone} para una entrevista", "Consultas: {phone}"),
            "close_plain": ("Envía tu CV a empleo@{company_slug}.example",
                            "Entrevistas en nuestra oficina de {city}"),
        },
        "pt": {
            "open": ("{company} está a recrutar em {city}", "Precisa-se de {job} em {city}",
                     "Oferta de emprego: {job}", "Trabalho sazonal como {job}"),
            "body": ("Contrato e formação", "Turnos {day}", "Salário {price} por mês",
                     "Experiência valorizada", "Boa equipa", "Envie o seu currículo"),
            "close_phone": ("Ligue {phone} para entrevista", "Dúvidas: {phone}"),
            "close_plain": ("Envie o CV para rh@{company_slug}.example",
                            "Entrevistas no nosso escritório em {city}"),
        },
    },
    "housing": {
        "en": {
            "open": ("Room to rent in {city}", "{shared} {flat} near the centre of {city}",
                     "Bright room, bills included"),
            "body": ("Rent {price} per month", "Available {day}", "Close to transport",
                     "{deposit} required", "Quiet building"),
            "close_phone": ("Call {phone}", "Viewings: {phone}"),
            "close_plain": ("Viewings on request", "Message for details"),
        },
        "es": {
            "open": ("Se alquila habitación en {city}",
                     "{flat} {shared} cerca del centro de {city}",
                     "Habitación luminosa, gastos incluidos"),
            "body": ("Alquiler {price} al mes", "Visitas {day}", "Cerca del transporte",
                     "Se pide {deposit}", "Edificio tranquilo"),
            "close_phone": ("Llama al {phone}", "Visitas: {phone}"),
            "close_plain": ("Visitas con cita", "Escribe para más datos"),
        },
        "pt": {
            "open": ("Quarto para alugar em {city}", "{flat} {shared} perto do centro de {city}",
                     "Quarto luminoso, despesas incluídas"),
            "body": ("Renda {price} por mês", "Visitas {day}", "Perto de transportes",
                     "Pede-se {deposit}", "Prédio tranquilo"),
            "close_phone": ("Ligue {phone}", "Visitas: {phone}"),
            "close_plain": ("Visitas por marcação", "Envie mensagem para detalhes"),
        },
    },
    "travel": {
        "en": {
            "open": ("Trips abroad with {company}", "Work and travel programme from {city}",
                     "Group tours leaving {city}"),
            "body": ("Departures {day}", "Packages from {price}", "Small groups",
                     "Visa advice available", "Insurance optional"),
            "close_phone": ("Bookings: {phone}", "Call {phone}"),
            "close_plain": ("Book at {company_slug}.example", "Visit our office in {city}"),
        },
        "es": {
            "open": ("Viajes al extranjero con {company}",
                     "Programa de trabajo y viaje desde {city}",
                     "Viajes en grupo desde {city}"),
            "body": ("Salidas {day}", "Paquetes desde {price}", "Grupos pequeños",
                     "Asesoría de visados", "Seguro opcional"),
            "close_phone": ("Reservas: {phone}", "Llama al {phone}"),
            "close_plain": ("Reserva en {company_slug}.example",
                            "Visita nuestra oficina en {city}"),
        },
        "pt": {
            "open": ("Viagens ao estrangeiro com {company}",
                     "Programa de trabalho e viagem de {city}",
                     "Viagens em grupo a partir de {city}"),
            "body": ("Partidas {day}", "Pacotes desde {price}", "Grupos pequenos",
                     "Apoio com vistos", "Seguro opcional"),
            "close_phone": ("Reservas: {phone}", "Ligue {phone}"),
            "close_plain": ("Reserve em {company_slug}.example", "Visite a nossa loja em {city}"),
        },
    },
}

DAYS: dict[str, tuple[str, ...]] = {
    "en": ("Monday to Friday", "{weekends}", "every evening", "from Monday"),
    "es": ("de lunes a viernes", "{weekends}", "todas las tardes", "desde el lunes"),
    "pt": ("de segunda a sexta", "{weekends}", "todas as tardes", "a partir de segunda"),
}

JOBS: dict[str, tuple[str, ...]] = {
    "en": ("{waiter}", "cleaner", "fruit picker", "warehouse assistant", "care assistant"),
    "es": ("{waiter}", "personal de limpieza", "recolector de fruta", "mozo de almacén",
           "cuidador"),
    "pt": ("{waiter}", "pessoal de limpeza", "apanhador de fruta", "operador de armazém",
           "cuidador"),
}

PERSONA_NAMES: dict[str, tuple[str, ...]] = {
    "en": ("Anna", "Mia", "Chloe", "Ruby", "Grace", "Ella", "Sophie", "Lily", "Jade", "Holly"),
    "es": ("Lola", "Carla", "Sofía", "Lucía", "Valeria", "Camila", "Paula", "Daniela", "Marta",
           "Elena"),
    "pt": ("Bia", "Ana", "Carol", "Júlia", "Larissa", "Beatriz", "Inês", "Rita", "Mariana",
           "Letícia"),
}

CITIES: dict[str, tuple[str, ...]] = {
    "en": ("London", "Manchester", "Dublin", "Birmingham", "Leeds", "Cork", "Glasgow"),
    "es-ES": ("Madrid", "Barcelona", "Valencia", "Sevilla", "Bilbao", "Málaga", "Zaragoza"),
    "es-419": ("Ciudad de México", "Guadalajara", "Bogotá", "Medellín", "Lima", "Monterrey",
               "Cali"),
    "pt-PT": ("Lisboa", "Porto", "Braga", "Coimbra", "Faro"),
    "pt-BR": ("São Paulo", "Rio de Janeiro", "Belo Horizonte", "Curitiba", "Recife", "Salvador"),
}

#: Fictional sites on reserved domains, by base language and category group.
SITES: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {"escort": ("citylistings-demo.example", "nightboard-fict.test"),
           "labour": ("jobboard-demo.example", "classifieds-fict.test")},
    "es": {"escort": ("anuncios-ficticios.example", "tablon-demo.test"),
           "labour": ("empleos-ficticios.example", "clasificados-demo.test")},
    "pt": {"escort": ("classificados-ficticios.example", "mural-demo.test"),
           "labour": ("vagas-ficticias.example", "anuncios-demo.test")},
}

COMPANY_WORDS: tuple[tuple[str, ...], tuple[str, ...]] = (
    ("Northwind", "Bluebay", "Greenfield", "Redhill", "Silverline", "Oakmere", "Sunvale"),
    ("Staffing", "Logistics", "Hospitality", "Care", "Farms", "Travel", "Services"),
)

#: Decoration emoji added to filler (not indicators).
EMOJI: tuple[str, ...] = ("✨", "🌸", "☎️", "⭐", "💼", "✈️", "🏠")

SEPARATORS: tuple[str, ...] = (". ", " - ", " | ", "! ", ", ")

#: Typical amounts per regional variant: (escort rate, salary, rent, travel package,
#: unrealistic pay, recruitment fee). Formatted with the local currency by the generator.
AMOUNTS: dict[str, tuple[int, int, int, int, int, int]] = {
    "en": (80, 1650, 550, 300, 4500, 300),
    "es-ES": (70, 1200, 400, 350, 3500, 250),
    "es-419": (1200, 9500, 4500, 6000, 45000, 3000),
    "pt-PT": (60, 850, 350, 300, 3000, 200),
    "pt-BR": (250, 2100, 900, 1500, 12000, 900),
}
