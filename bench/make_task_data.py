"""Write the shipped task datasets, bricks/data/tasks/{json-extract,style,span-qa}.jsonl, from the word lists
and templates below. Seeded: running it again rewrites the files byte for byte.

    .venv/bin/python bench/make_task_data.py [--check]

Every example is a chat {"messages": [user, assistant]}; user prompts are unique within a task, so the
held-out split (by record hash) holds instances that training never saw. Each reference reply is checked
against its task's metric before anything is written (see bricks/data/tasks/README.md).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bricks.ops.tasks import JSON_KEYS, STYLE_BULLET, TASKS, TASKS_DIR  # noqa: E402

EXAMPLES = 300
SEED = 14

# --- json-extract: people -------------------------------------------------------------------------------
WOMEN = ["Mara", "Ines", "Hanna", "Leila", "Sofia", "Priya", "Yuki", "Amara", "Greta", "Noor", "Elena",
         "Freya", "Zofia", "Camila", "Aiko", "Nadia", "Ruth", "Ingrid", "Lucia", "Maren", "Tala", "Esme",
         "Ada", "Vera", "Wen", "Olga", "Rosa", "Keiko", "Thandi", "Beatriz"]
MEN = ["Tomas", "Jonas", "Ravi", "Kofi", "Mateo", "Lars", "Omar", "Felix", "Hugo", "Emil", "Diego", "Anton",
       "Kenji", "Samir", "Niko", "Pavel", "Idris", "Bruno", "Arjun", "Oskar", "Malik", "Teo", "Viktor",
       "Sven", "Chidi", "Rafael", "Luca", "Dmitri", "Elias", "Kwame"]
SURNAMES = ["Lind", "Berg", "Okafor", "Novak", "Castillo", "Tanaka", "Moreau", "Haddad", "Kowalski", "Mensah",
            "Fischer", "Rossi", "Silva", "Petrov", "Nakamura", "Brennan", "Dubois", "Larsen", "Qureshi",
            "Abara", "Holm", "Vargas", "Sato", "Keller", "Byrne", "Osei", "Marin", "Sandoval", "Weiss", "Kaur",
            "Duarte", "Hartmann", "Lopez", "Achebe", "Strand", "Romano", "Yilmaz", "Farah", "Nilsson", "Costa",
            "Mendes", "Okoro", "Quist", "Adler", "Ferreira", "Janssen", "Horvat", "Reyes", "Bauer", "Eriksen"]
CITIES = ["Porto", "Oslo", "Lyon", "Nairobi", "Osaka", "Quito", "Krakow", "Leeds", "Tampere", "Accra",
          "Bilbao", "Graz", "Perth", "Cork", "Ghent", "Turin", "Seville", "Malmo", "Bergen", "Dakar", "Lima",
          "Hanoi", "Pune", "Izmir", "Tbilisi", "Riga", "Tallinn", "Utrecht", "Basel", "Leipzig", "Bologna",
          "Valencia", "Montreal", "Denver", "Austin", "Halifax", "Auckland", "Hobart", "Busan", "Sapporo",
          "Kyoto", "Cusco", "Rosario", "Curitiba", "Kampala", "Lusaka", "Tunis", "Fez", "Cairo", "Amman"]
JOBS = ["baker", "nurse", "pilot", "teacher", "architect", "plumber", "chemist", "librarian", "carpenter",
        "journalist", "dentist", "electrician", "translator", "farmer", "photographer", "engineer", "chef",
        "lawyer", "potter", "tailor", "pharmacist", "firefighter", "gardener", "mechanic", "violinist",
        "accountant", "designer", "surveyor", "beekeeper", "veterinarian", "midwife", "welder", "geologist",
        "florist", "barista", "programmer", "painter", "sailor", "economist", "optician"]
HOBBIES = ["hiking", "chess", "cycling", "painting", "birdwatching", "baking", "swimming", "gardening",
           "karaoke", "fishing", "climbing", "knitting", "jazz", "board games", "photography", "running"]
# {name} {age} {city} {job} {a_job} ("a baker", "an architect") {He}/{he} {his}
PERSON_SENTENCES = [
    "{name} is a {age}-year-old {job} from {city}.",
    "Meet {name}, {age}, {a_job} in {city}.",
    "{name} works as {a_job} in {city}. {He} is {age} years old.",
    "{name} ({age}) lives in {city} and makes a living as {a_job}.",
    "Our new neighbour is {name}, {a_job} who just moved to {city}. {He} turned {age} last month.",
    "{city} is home to {name}, {a_job} aged {age}.",
    "At {age}, {name} is still working as {a_job} in {city}.",
    "I spoke with {name} yesterday. {He} is {a_job}, {age} years old, based in {city}.",
    "{name}, {a_job} from {city}, celebrated {his} {ordinal} birthday this week.",
    "Name: {name}. Lives in {city}. Occupation: {job}. Age: {age}.",
    "The {job} {name} has lived in {city} for years and is now {age}.",
    "Born {age} years ago, {name} now works as {a_job} in {city}.",
    "{name} runs a small studio in {city}; {he} is {a_job} and {age} years old.",
    "After years abroad, {name} settled in {city}, where the {age}-year-old works as {a_job}.",
    "{name} is {age}. {He} has been {a_job} in {city} since leaving school.",
]
PERSON_EXTRAS = ["{He} enjoys {hobby} at weekends.", "{He} spends {his} evenings on {hobby}.",
                 "{His} friends know {him} for {his} love of {hobby}.", "{He} has two cats."]
PERSON_ASKS = [
    "Extract the person as JSON.\n{text}",
    "{text}\nReturn the details as JSON.",
    "Turn this into JSON: {text}",
    "Give me JSON for this person: {text}",
    "Fill in the record: {text}",
    "Parse this profile into JSON.\n\n{text}",
    "Please extract name, age, city and job from: {text}",
    "JSON only, please.\n{text}",
]


def article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def person_example(rng: random.Random) -> tuple[str, str]:
    woman = rng.random() < 0.5
    first = rng.choice(WOMEN if woman else MEN)
    person = {"name": f"{first} {rng.choice(SURNAMES)}", "age": rng.randint(19, 78),
              "city": rng.choice(CITIES), "job": rng.choice(JOBS)}
    pronouns = {"He": "She", "he": "she", "his": "her", "His": "Her", "him": "her"} if woman else \
               {"He": "He", "he": "he", "his": "his", "His": "His", "him": "him"}
    slots = {**person, **pronouns, "a_job": article(person["job"]), "ordinal": ordinal(person["age"]),
             "hobby": rng.choice(HOBBIES)}
    text = rng.choice(PERSON_SENTENCES).format(**slots)
    if rng.random() < 0.35:
        text += " " + rng.choice(PERSON_EXTRAS).format(**slots)
    prompt = rng.choice(PERSON_ASKS).format(text=text)
    return prompt, json.dumps({key: person[key] for key in JSON_KEYS})


# --- style: everyday questions, three lowercase bullets ----------------------------------------------------
# (what a question asks to do, what it is about, five tips: a reply picks three)
TOPICS = [
    ("sleep better", "sleep", ["keep the same bedtime every night", "put your phone away an hour before bed",
     "keep the bedroom cool and dark", "skip coffee after lunch", "get some daylight in the morning"]),
    ("keep a houseplant alive", "houseplants", ["check the soil before you water", "give it bright indirect light",
     "use a pot with drainage holes", "wipe dust off the leaves", "feed it lightly in spring and summer"]),
    ("save money on groceries", "grocery shopping", ["plan meals for the week first",
     "shop with a list and stick to it", "buy store brands for basics", "never shop when you are hungry",
     "cook big batches and freeze portions"]),
    ("learn a new language", "language learning", ["practise a little every day",
     "learn the most common words first", "listen to podcasts in that language", "find a partner to talk with",
     "label things around your home"]),
    ("start running", "running for beginners", ["start with walk and run intervals", "buy shoes that fit well",
     "go slow enough to talk", "rest a day between runs", "add distance a little each week"]),
    ("focus while studying", "studying", ["study in short blocks with breaks", "silence your phone and hide it",
     "explain the topic out loud", "test yourself instead of rereading", "keep one tidy place for work"]),
    ("make good coffee at home", "home coffee", ["buy whole beans and grind them fresh",
     "weigh the coffee and the water", "use water just off the boil", "keep beans in a sealed jar",
     "clean your gear often"]),
    ("prepare for a job interview", "job interviews", ["research the company beforehand",
     "practise answers to common questions", "prepare two questions to ask", "plan your route and arrive early",
     "bring examples of your work"]),
    ("keep my kitchen clean", "kitchen cleaning", ["wipe surfaces right after cooking", "wash up as you go",
     "empty the bin before it overflows", "clear the sink every night", "clean the fridge once a week"]),
    ("travel light", "packing", ["pick clothes that mix and match", "roll clothes instead of folding",
     "take travel-size toiletries", "wear your bulkiest shoes on the trip", "leave the just-in-case items home"]),
    ("drink more water", "staying hydrated", ["keep a bottle on your desk", "drink a glass with every meal",
     "add lemon or mint for taste", "set a reminder on your phone", "eat fruit that holds lots of water"]),
    ("have more productive mornings", "mornings", ["lay out your clothes the night before",
     "do the hardest task first", "skip email for the first hour", "eat a simple breakfast",
     "write a short plan for the day"]),
    ("bake bread", "baking bread", ["weigh your flour instead of using cups",
     "let the dough rise somewhere warm", "knead until it feels smooth", "bake with steam for a crisp crust",
     "let it cool before slicing"]),
    ("reduce stress", "stress", ["take a short walk outside", "breathe slowly for a few minutes",
     "write down what is worrying you", "talk to someone you trust", "cut back on late nights"]),
    ("take better photos with my phone", "phone photography", ["clean the lens first",
     "use natural light when you can", "tap to focus on your subject", "follow the rule of thirds",
     "hold the phone steady with both hands"]),
    ("keep a budget", "budgeting", ["track every expense for a month", "set a limit for each category",
     "move money into savings on payday", "review the numbers every week", "use cash for fun spending"]),
    ("make friends in a new city", "making friends", ["join a club or a class", "say yes to invitations",
     "volunteer for a local cause", "talk to your neighbours", "see the same people regularly"]),
    ("grow tomatoes", "growing tomatoes", ["plant them in full sun", "water deeply at the base",
     "add stakes or cages early", "pinch off the side shoots", "feed them once fruit appears"]),
    ("write a good email", "writing emails", ["put the point in the first line", "keep paragraphs short",
     "use a clear subject line", "say what you need and by when", "read it once before sending"]),
    ("take care of a bike", "bike care", ["keep the tyres pumped up", "oil the chain every few weeks",
     "check the brakes before rides", "wipe off mud after wet rides", "store it somewhere dry"]),
    ("get better at public speaking", "public speaking", ["practise out loud several times",
     "know your first minute by heart", "slow down and pause", "look at a few friendly faces",
     "keep your slides simple"]),
    ("cook rice well", "cooking rice", ["rinse the rice until the water runs clear", "use the right amount of water",
     "keep the lid on while it cooks", "let it rest for ten minutes", "fluff it with a fork"]),
    ("keep my phone battery healthy", "phone batteries", ["keep it out of the hot sun",
     "charge it between twenty and eighty percent", "use a decent charger", "turn down the screen brightness",
     "close apps you are not using"]),
    ("train a puppy", "puppy training", ["reward good behaviour right away", "keep sessions short and fun",
     "use the same words every time", "take it outside often", "be patient and consistent"]),
    ("read more books", "reading", ["carry a book everywhere", "read for ten minutes before bed",
     "quit books you do not enjoy", "join a book club", "swap some screen time for pages"]),
    ("stay warm in winter", "winter", ["wear layers instead of one thick coat",
     "keep your hands and feet covered", "seal drafts around windows", "have warm drinks",
     "keep moving when you are outside"]),
    ("organise my wardrobe", "wardrobes", ["take everything out first",
     "donate what you have not worn in a year", "group clothes by type", "use matching hangers",
     "keep seasonal items in boxes"]),
    ("remember names", "remembering names", ["repeat the name when you hear it", "link the name to a picture",
     "use it once in the conversation", "write it down afterwards", "ask again if you missed it"]),
    ("eat more vegetables", "eating vegetables", ["add a vegetable to every meal",
     "keep cut vegetables in the fridge", "roast them with a little oil", "try one new vegetable each week",
     "blend greens into soups"]),
    ("fix a squeaky door", "squeaky doors", ["find which hinge is squeaking", "put a drop of oil on the hinge",
     "open and close the door a few times", "wipe away any extra oil", "tighten loose screws"]),
    ("stop procrastinating", "procrastination", ["break the task into small steps",
     "start with just five minutes", "clear distractions from your desk", "set a clear deadline",
     "reward yourself when you finish"]),
    ("choose a ripe watermelon", "watermelons", ["pick one that feels heavy", "look for a creamy yellow spot",
     "tap it and listen for a hollow sound", "choose a dull skin over a shiny one", "avoid soft spots"]),
    ("keep a journal", "journaling", ["write at the same time each day", "start with just three lines",
     "keep the notebook by your bed", "do not worry about grammar", "reread old pages now and then"]),
    ("host a dinner party", "dinner parties", ["pick dishes you can make ahead", "ask guests about allergies",
     "set the table before anyone arrives", "keep the music low", "let guests help a little"]),
    ("learn to swim", "swimming", ["take lessons with a coach", "practise floating first",
     "learn to breathe out under water", "use a kickboard for your legs", "swim a little and often"]),
    ("prepare for an exam", "exams", ["start revising weeks ahead", "do old exam papers",
     "sleep well the night before", "make short summary notes", "eat a good breakfast on the day"]),
    ("keep my laptop fast", "laptops", ["restart it now and then", "uninstall programs you never use",
     "keep some disk space free", "install the updates", "limit the apps that start at login"]),
    ("make a good first impression", "first impressions", ["arrive on time", "smile and make eye contact",
     "listen more than you talk", "dress for the setting", "remember one thing they said"]),
    ("keep my car in good shape", "car care", ["check the tyre pressure monthly", "change the oil on schedule",
     "keep the washer fluid topped up", "wash off road salt in winter", "listen for new noises"]),
    ("get started with meditation", "meditation", ["start with five minutes a day", "sit somewhere quiet",
     "focus on your breathing", "come back gently when your mind wanders", "use a guided app at first"]),
    ("move house without stress", "moving house", ["start packing weeks early", "label every box by room",
     "book the van well ahead", "pack a bag for the first night", "get rid of things before you pack"]),
    ("write a short story", "story writing", ["start in the middle of the action",
     "give your hero a clear goal", "keep the cast small", "cut every word you do not need",
     "read it aloud when you are done"]),
    ("stay safe in the sun", "sun safety", ["wear sunscreen every day", "put more on every two hours",
     "wear a hat and sunglasses", "stay in the shade at midday", "drink plenty of water"]),
    ("keep bread fresh", "storing bread", ["store it in a bread box", "keep it cut side down",
     "freeze slices you will not eat soon", "keep it out of the fridge", "wrap it in a cloth"]),
    ("play better chess", "chess", ["control the centre early", "bring out knights and bishops first",
     "castle to keep your king safe", "check every move for threats", "review the games you lose"]),
    ("care for a cast iron pan", "cast iron pans", ["dry it right after washing", "rub in a thin coat of oil",
     "never leave it soaking in water", "heat it up slowly", "cook with it often"]),
    ("get along with roommates", "roommates", ["agree on chores early", "talk about problems calmly",
     "respect quiet hours", "label your food", "split shared costs fairly"]),
    ("keep my inbox under control", "email", ["unsubscribe from newsletters you skip",
     "answer short emails at once", "use a few simple folders", "check email at set times",
     "archive instead of keeping everything"]),
]
# {goal}: what to do ("sleep better"); {topic}: what it is about ("sleep")
STYLE_ASKS = ["How can I {goal}?", "Any tips to {goal}?", "What's the best way to {goal}?",
              "I want to {goal}. Where do I start?", "Can you help me {goal}?", "Give me some advice on {topic}.",
              "What should I know about {topic}?", "Quick tips for {topic}, please.",
              "What do you recommend for {topic}?", "how do i {goal}"]


def style_examples(rng: random.Random) -> list[tuple[str, str]]:
    """One example per (topic, wording) pair drawn, without repeats: every prompt is unique."""
    pairs = [(topic, ask) for topic in TOPICS for ask in STYLE_ASKS]
    out = []
    for (goal, topic, tips), ask in rng.sample(pairs, EXAMPLES):
        out.append((ask.format(goal=goal, topic=topic), "\n".join(STYLE_BULLET + tip for tip in rng.sample(tips, 3))))
    return out


# --- span-qa: the invented archipelago of Vellmark ----------------------------------------------------------
SCHOLAR_FIRST = ["Ilsa", "Bram", "Oren", "Tamsin", "Corwin", "Maelis", "Idra", "Fenn", "Yara", "Soren", "Halde",
                 "Ludo", "Neve", "Arlo", "Wystan", "Petra", "Jory", "Elspet", "Cato", "Rune"]
SCHOLAR_LAST = ["Worth", "Vask", "Marrow", "Quell", "Dorran", "Hewe", "Ashby", "Tenn", "Corvel", "Lisk", "Brand",
                "Orme", "Salk", "Fenwick", "Thale", "Mercer", "Vey", "Hollis", "Strake", "Pim"]
CREATURE_HEAD = ["glass", "marrow", "ember", "frost", "reed", "salt", "ash", "thorn", "copper", "dusk", "moss",
                 "pale", "silt", "amber", "cinder", "brine", "fern", "slate", "pearl", "rust", "bramble", "dune"]
CREATURE_TAIL = ["moth", "finch", "newt", "hare", "eel", "beetle", "crane", "otter", "vole", "wren", "lizard",
                 "toad", "heron", "shrew", "carp", "gecko"]
PLACE_HEAD = ["Kessel", "Orrin", "Dunmere", "Hask", "Morrow", "Tarn", "Ebbing", "Lusk", "Graymoor", "Seld",
              "Wyck", "Callow"]
PLACE_TAIL = ["Fen", "Vale", "Heath", "Reach", "Shallows", "Woods", "Cliffs", "Flats"]
FOODS = ["reed beetles", "frost lichen", "sea grapes", "drift seeds", "salt worms", "moon kelp", "river snails",
         "ash berries", "pine grubs", "marsh clover", "cave moss", "tide shrimp"]
COLOURS = ["slate grey", "pale green", "copper red", "dusty blue", "bright yellow", "deep violet", "silver",
           "sandy brown", "jet black", "rust orange"]
TOWN_HEAD = ["Ard", "Bel", "Cor", "Dun", "Elm", "Fal", "Gor", "Hal", "Ist", "Kel", "Lor", "Mar", "Nor", "Ost",
             "Pel", "Quen", "Ros", "Sel", "Tor", "Ulv", "Var", "Wen"]
TOWN_TAIL = ["mouth", "ford", "holm", "wick", "stead", "haven", "mere", "gate"]
RIVERS = ["River " + name for name in ["Amble", "Tessa", "Corr", "Lune", "Mirrow", "Esk", "Ydre", "Fane", "Ossel",
                                         "Brack"]]
GOODS = ["blue glass", "smoked eels", "wool blankets", "copper bells", "salt cheese", "herring pies", "tarred rope",
         "paper lanterns", "pear cider", "slate tiles"]
FESTIVALS = ["Lantern Night", "Tide Fair", "Ember Week", "Reed Festival", "Salt Market", "Kite Day"]
MONTHS = ["March", "April", "May", "June", "July", "August", "September", "October"]
DEVICE_HEAD = ["tide", "wind", "brass", "lantern", "kelp", "fog", "salt", "star", "reed", "ember"]
DEVICE_TAIL = ["pump", "loom", "kiln", "press", "clock", "mill", "sled", "compass", "drum", "lamp"]
MATERIALS = ["brass", "whalebone", "oak", "river clay", "copper", "cast iron", "willow", "slate", "pewter"]
PURPOSES = ["drain flooded fields", "spin kelp into rope", "measure the tides", "dry salted fish",
            "light the harbour", "grind barley", "warn ships of fog", "press apples", "weave sailcloth",
            "melt sea ice"]

# Per kind of thing: how its name is made, its facts as (sentence, {slot: questions}), one fact per sentence.
CREATURE_FACTS = [
    ("The {name} lives in {place}.", {"place": ["Where does the {name} live?", "In which place is the {name} found?"]}),
    ("It feeds mainly on {food}.", {"food": ["What does the {name} eat?", "What is the main food of the {name}?"]}),
    ("Adults are {colour}.", {"colour": ["What colour are adult {name}s?", "What colour is an adult {name}?"]}),
    ("It was first described by {person} in {year}.",
     {"person": ["Who first described the {name}?", "Which scholar first described the {name}?"],
      "year": ["In what year was the {name} first described?", "When was the {name} first described?"]}),
]
TOWN_FACTS = [
    ("{name} is a harbour town on the {river}.",
     {"river": ["On which river is {name}?", "Which river runs through {name}?"]}),
    ("It was founded by {person} in {year}.",
     {"person": ["Who founded {name}?", "Who was the founder of {name}?"],
      "year": ["In what year was {name} founded?", "When was {name} founded?"]}),
    ("The town is known for its {goods}.", {"goods": ["What is {name} known for?", "What is {name} famous for?"]}),
    ("Every {month} it holds the {festival}.",
     {"festival": ["Which festival does {name} hold?", "What festival takes place in {name}?"],
      "month": ["In which month does {name} hold its festival?", "When is the festival held in {name}?"]}),
]
DEVICE_FACTS = [
    ("The {name} was built by {person} in {year}.",
     {"person": ["Who built the {name}?", "Who made the first {name}?"],
      "year": ["In what year was the {name} built?", "When was the first {name} built?"]}),
    ("It is made of {material}.",
     {"material": ["What is the {name} made of?", "Which material is the {name} made of?"]}),
    ("People in Vellmark use it to {purpose}.",
     {"purpose": ["What is the {name} used for?", "What do people in Vellmark use the {name} for?"]}),
]
QA_ASKS = [
    "{passage}\n\nQuestion: {question}",
    "Passage: {passage}\nQuestion: {question}\nAnswer with the exact words from the passage.",
    "Read the text and answer.\n{passage}\n{question}",
    "Context: {passage}\nQ: {question}",
    "{question}\nUse this text: {passage}",
]


def span_example(rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(["creature", "town", "device"])
    slots = {"person": f"{rng.choice(SCHOLAR_FIRST)} {rng.choice(SCHOLAR_LAST)}", "year": str(rng.randint(1610, 1925)),
             "place": f"{rng.choice(PLACE_HEAD)} {rng.choice(PLACE_TAIL)}", "food": rng.choice(FOODS),
             "colour": rng.choice(COLOURS), "river": rng.choice(RIVERS), "goods": rng.choice(GOODS),
             "month": rng.choice(MONTHS), "festival": rng.choice(FESTIVALS), "material": rng.choice(MATERIALS),
             "purpose": rng.choice(PURPOSES)}
    if kind == "creature":
        slots["name"], facts = rng.choice(CREATURE_HEAD) + rng.choice(CREATURE_TAIL), CREATURE_FACTS
    elif kind == "town":
        slots["name"], facts = rng.choice(TOWN_HEAD) + rng.choice(TOWN_TAIL), TOWN_FACTS
    else:
        slots["name"], facts = f"{rng.choice(DEVICE_HEAD)} {rng.choice(DEVICE_TAIL)}", DEVICE_FACTS
    # the first fact names the thing; two or three more follow in a random order
    chosen = [facts[0]] + rng.sample(facts[1:], min(len(facts) - 1, rng.randint(2, 3)))
    passage = " ".join(sentence for sentence, _ in chosen).format(**slots)
    asked, questions = rng.choice([item for _, qs in chosen for item in qs.items()])
    question = rng.choice(questions).format(**slots)
    return rng.choice(QA_ASKS).format(passage=passage, question=question), slots[asked]


# --- writing ------------------------------------------------------------------------------------------------
def unique_examples(rng: random.Random, make) -> list[tuple[str, str]]:
    """EXAMPLES draws of make(rng) with distinct prompts."""
    out, seen = [], set()
    while len(out) < EXAMPLES:
        prompt, reply = make(rng)
        if prompt not in seen:
            seen.add(prompt)
            out.append((prompt, reply))
    return out


def build(task: str) -> str:
    """The JSONL text of one task's file (a fresh generator seeded per task, so each file stands alone)."""
    rng = random.Random(f"{SEED}-{task}")
    if task == "json-extract":
        pairs = unique_examples(rng, person_example)
    elif task == "style":
        pairs = style_examples(rng)
    else:
        pairs = unique_examples(rng, span_example)
    replies = [reply for _, reply in pairs]
    score = TASKS[task].score(replies, replies)
    assert score["value"] == 1.0, f"{task}: a reference reply fails its own metric: {score}"
    lines = [json.dumps({"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]},
                        ensure_ascii=False) for p, r in pairs]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only check that the shipped files are up to date")
    args = ap.parse_args()
    stale = []
    for task in TASKS:
        text, path = build(task), TASKS_DIR / f"{task}.jsonl"
        if args.check:
            if not path.is_file() or path.read_bytes() != text.encode("utf-8"):
                stale.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))
        print(f"{path}: {text.count(chr(10))} examples")
    if stale:
        sys.exit(f"out of date (run bench/make_task_data.py): {', '.join(map(str, stale))}")


if __name__ == "__main__":
    main()
